"""Central intake: the collector gateway stations deliver to, and its storage backends."""

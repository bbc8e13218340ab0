"""Station: controller, bus, config, daemon runtime and the tools around them."""

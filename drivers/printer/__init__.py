"""Card printer: the Evolis-style command protocol, its byte pipes and the host-side driver."""

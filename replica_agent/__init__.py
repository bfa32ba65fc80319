"""The replica agent: the engine every GPU node runs, its executors and (later) its services."""

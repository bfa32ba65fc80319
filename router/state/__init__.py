"""The router's live state: in-flight ledger, prefix index, replica health, and the cluster that
owns them and builds the immutable views policies read. Pure core: time comes in as ``now``."""

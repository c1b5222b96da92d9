"""Five Safes TES: a GA4GH TES 1.1 gateway for federated Trusted Research Environments."""

__version__ = "0.1.0"

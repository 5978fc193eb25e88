"""Access with API keys and team wallets: who may spend from which wallet, within which caps.

Keys and members are rows here; what they may spend is a cap in the ledger (`credit_caps`), which
the hold counts against in its own transaction. This package talks to balances only through the
ledger's service.
"""

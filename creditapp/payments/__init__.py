"""Buying credits: packs, purchases and the provider that takes the money (Stripe, or the
built-in test provider).

A purchase is a state machine whose only effect on money is one lot, granted through the ledger
in the transaction that marks it paid, and taken back (in proportion) by refunds and a lost
dispute. Provider webhooks go through an inbox: stored before they are applied, applied once, in
any order. This package talks to balances only through the ledger's service.
"""

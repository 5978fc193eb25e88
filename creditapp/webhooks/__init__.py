"""Outgoing webhooks: events written to an outbox in the transaction of the change that causes
them, and delivered to the operators' endpoints, signed the Standard Webhooks way, with retries.

The words: an *event* is one row of the outbox (`webhook_events`: what happened, once); an
*endpoint* is a URL an administrator subscribed to some event types; a *delivery* is one event
for one endpoint (made when the event is dispatched, not when it is emitted); an *attempt* is one
POST of a delivery. A delivery's `webhook-id` is its event's, so a receiver sees the same id on
every retry and can drop repeats.

No Flask here but in queue.py (the deliveries' side of the job queue): the API, the CLI and
the job workers use the same functions.
"""

"""Webhooks after the Standard Webhooks specification (v1): the events of the catalogue (`catalogue`), written
in the transaction of their audit row (`outbox`), signed with secrets derived from the master secret
(`secrets`), and delivered with retries by a worker in every `serve` process (`delivery`)."""

"""Job events: read (``store``), streamed (``hub``), sent as webhooks (``delivery``,
``endpoints``) and expired with results (``retention``). Migration 0013 writes them."""

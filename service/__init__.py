"""Self-hosted group counter service speaking the hosted chat platform's REST commands."""

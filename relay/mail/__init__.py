"""Outgoing email over SMTP (``[email]``): alerts, and mail for people."""

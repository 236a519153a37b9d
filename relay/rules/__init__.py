"""Rules applied per message or per connection: publisher backpressure, rate limits, redaction, support-chat
first-response timing."""

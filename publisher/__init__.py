"""The publisher's HTTP surfaces: the publisher API (domains, BYO certificates) and the settings
pages. ``auth`` holds the one publisher session, CSRF and ownership check they share."""

"""What cacheorch needs to talk to servers: the tile acceptor (what a whole tile is)."""

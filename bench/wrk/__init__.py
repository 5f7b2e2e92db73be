"""wrk with requests spread over many keys (spread.lua) and the helpers that drive it."""

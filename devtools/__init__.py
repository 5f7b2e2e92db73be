"""Dev tools, never imported by ``edgectl serve``, ``agent`` or ``shortlinks``: the demo, the
Pebble launcher, the sample platform app and an HTTPS probe. ``edgectl demo`` loads them."""

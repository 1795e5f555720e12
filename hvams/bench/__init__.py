"""``hvams bench``: communication, speed and quality of the three strategies."""

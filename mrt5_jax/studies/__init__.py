"""mrt5-bench studies (speed, memory, deletion control); no library module imports them."""

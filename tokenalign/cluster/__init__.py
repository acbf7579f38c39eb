"""Infrastructure: Ray (connect, resources, placement), the embedded Redis fleet, a buffer's servers, the watchdog."""

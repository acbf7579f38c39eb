"""Jobs beside training that use the whole stack below: the demo preference set, fitting a head."""

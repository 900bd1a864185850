"""The operations manual as typed data. Workflows interpret it; nothing else hard-codes a
switch name or a threshold."""

"""What comes from outside: generic file readers, OBELICS, image fetching, text sets, corpus tables, importers."""

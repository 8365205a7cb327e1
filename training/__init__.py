"""Training code (expert heads, LVLM adapters). Imports the library; the library never imports this."""

"""Declarative device profiles (TOML files beside this module), read by export and run."""

"""``mercury-export``: recordings and incident bundles to columnar files."""

"""A read-only DICOMweb server over a migrated archive (`pacsmigrate serve`)."""

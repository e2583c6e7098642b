"""The declarative format: models, loading with file:line errors, validation, templating."""

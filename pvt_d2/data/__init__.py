"""Datasets (the bundled synthetic shapes), the seeded training stream and the dataset mappers."""

"""The course: course.toml parsed and fingerprinted, its fixed data frozen, its tokenizers."""

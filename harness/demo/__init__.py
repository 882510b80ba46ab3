"""`harness demo`: the example class (`example_class`, one builder per student in `students/`), its reference
models and the whole job on the embedded course."""

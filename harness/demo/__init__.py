"""`harness demo`: the example class, its reference models and the whole job on the embedded course."""

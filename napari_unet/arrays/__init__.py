"""The array rules: what an array is (layout), the 3D rules (volumes), and how an image is normalised
before a network sees it (normalize). numpy only; they import nothing of ours but the vocabulary."""

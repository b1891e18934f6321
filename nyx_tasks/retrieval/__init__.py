"""Search, embedded corpora and their mapped vector jobs, and answering over retrieved documents."""

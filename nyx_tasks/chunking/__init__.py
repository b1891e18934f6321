"""Cutting documents into token chunks, and the tokenizer that counts them."""

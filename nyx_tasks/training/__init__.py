"""The training library (stage 1 and stage 2): loss, model, data, collator, trainer, driver."""

"""Foundation: settings, rules, logging, schemas, hashing, package paths and the error that stops a stage."""

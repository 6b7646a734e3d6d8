"""A notes service on a primary, a read replica and a database per tenant."""

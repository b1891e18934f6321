"""The artifact root: snapshots, attempt folders, leases, checkpoint markers and snapshot checks."""

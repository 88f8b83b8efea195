"""The only code that talks to etcd: transactions for submit, claim, complete,
requeue and cancel; watches that resume from a revision; leases and elections.
(`etcd` holds the client side, `server` how to run an etcd process.)"""

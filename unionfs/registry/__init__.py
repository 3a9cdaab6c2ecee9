"""Images to and from registries over the OCI distribution API (pull, push, login, search).

The data flow: `hosts` says how to reach a registry (HTTPS or, for loopback and insecure
registries, plain HTTP; which CAs), `auth` keeps credentials and bearer tokens, `client`
speaks HTTP with retries and resumable blob downloads, `manifests` picks and checks
manifests, and `pull`/`push`/`search` drive them. Pulled content lands in a staging dir
under the store's tmp/ and is installed only once every digest has been verified.
"""

"""Model packs: the manifest and its verification (``manifest``), the verified download
(``fetch``)."""

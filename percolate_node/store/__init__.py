"""The tenant's encrypted store: RocksDB with envelope encryption (see ``store`` and ``backup``)."""
from percolate_node.store.backup import restore
from percolate_node.store.errors import ShreddedError, StoreError, TamperedValueError, WrongKeyError
from percolate_node.store.kek import KekFile, generate_kek, load_kek
from percolate_node.store.store import Delete, EncryptedStore, Put, ResealProgress

__all__ = ["Delete", "EncryptedStore", "KekFile", "Put", "ResealProgress", "ShreddedError", "StoreError",
           "TamperedValueError", "WrongKeyError", "generate_kek", "load_kek", "restore"]

"""A pure-Python reader and writer for bbolt files, the database format etcd keeps.

Enough of bbolt (go.etcd.io/bbolt 1.3) to write a database that etcd 3.4 and
``etcdctl snapshot status/restore`` open, and to read one etcd wrote:

* :mod:`.layout`: the on-disk structures (page header, elements, meta with its FNV-64a
  checksum, bucket header) and their sizes;
* :mod:`.writer`: :func:`write_db` lays a :class:`Bucket` tree out in pages (meta pages
  0 and 1, an empty freelist, leaf and branch pages, inline buckets);
* :mod:`.reader`: :func:`read_db` parses a file back into a tree and checks it the way
  bbolt's ``Tx.Check`` does (every page reachable or free, none referenced twice).
"""

from keel_store.bbolt.layout import PAGE_SIZE, BoltError, Bucket
from keel_store.bbolt.reader import Database, read_db
from keel_store.bbolt.writer import write_db, write_db_pieces

__all__ = ["PAGE_SIZE", "BoltError", "Bucket", "Database", "read_db", "write_db", "write_db_pieces"]

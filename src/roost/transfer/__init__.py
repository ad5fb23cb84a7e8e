"""Moving data in and out of the store: Influx line protocol, CSV and Parquet files.

Import from the modules (`roost.transfer.imports`, `.exports`, `.lineprotocol`): the file formats load pyarrow,
which a running hub (which only parses pushed line protocol) should not carry in memory.
"""

"""The vocabulary every layer shares and none owns: money arithmetic in integer micro-USD
(``pricing``), billing periods (``periods``) and the clock (``clock``). It imports nothing of the
gateway but the error tree, so catalog, ledger, reports and the adapters can all use it without
depending on each other."""

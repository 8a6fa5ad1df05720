"""Everything that turns results into something to read: Markdown tables (``markdown``), PNG
figures (``plots``), what-ran-where records (``provenance``) and the asv result reader
(``asvresults``)."""

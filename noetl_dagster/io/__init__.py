"""Data between steps: ``ArrowRef`` references and their codec (``arrow_ref``), and the Arrow/Parquet IO manager with its retention job (``manager``)."""

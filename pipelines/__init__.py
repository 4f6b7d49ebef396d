"""Pipeline modules served by pipeserve, with the examples."""

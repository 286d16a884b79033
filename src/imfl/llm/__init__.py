"""LLM annotation: prompt building (:mod:`imfl.llm.prompts`), demonstration retrieval (:mod:`imfl.llm.retrieval`)
and a local causal-LM label scorer (:mod:`imfl.llm.local`, imported on demand because it needs torch)."""

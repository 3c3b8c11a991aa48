from .causal_lm import HFCausalLM, register_llm_architecture, registered_llm_architectures

__all__ = ['HFCausalLM', 'register_llm_architecture', 'registered_llm_architectures']

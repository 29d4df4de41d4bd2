"""Export: GGUF files and the Ollama Modelfile."""

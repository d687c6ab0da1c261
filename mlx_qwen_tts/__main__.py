from mlx_qwen_tts.cli import main

main()

from parley.service import main
from services.tts.service import TtsStage

main(TtsStage)

from parley.service import main
from services.vad.service import VadStage

main(VadStage)
